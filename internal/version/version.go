// Package version holds meshd's build version, set at link time with
// -ldflags "-X github.com/meshd/meshd/internal/version.Version=...".
package version

// Version is the meshd release; "dev" for a plain go build.
var Version = "dev"
