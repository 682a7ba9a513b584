package debug

import (
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/meshd/meshd/sds"
)

// Redacted wraps a source of published resources so that every secret's
// private key is replaced before anything leaves the process.
func Redacted(src func(string) (map[string][]types.Resource, bool)) func(string) (map[string][]types.Resource, bool) {
	return func(node string) (map[string][]types.Resource, bool) {
		res, ok := src(node)
		if !ok {
			return nil, false
		}
		out := make(map[string][]types.Resource, len(res))
		for url, items := range res {
			for _, item := range items {
				if s, isSecret := item.(*tlsv3.Secret); isSecret {
					item = sds.Redact(s)
				}
				out[url] = append(out[url], item)
			}
		}
		return out, true
	}
}
