// Command image builds a single-layer container image without a daemon or a
// registry and writes it as a docker-archive tarball, which `ctr images
// import`, `docker load` and `kind load image-archive` all read.
//
//	image -rootfs DIR -tag ghcr.io/meshd/meshd:dev -out meshd.tar \
//	      -entrypoint /usr/local/bin/meshd -user 65532:65532
//
// The layer is the directory tree under -rootfs, tarred here with every file
// owned by 0:0 (numeric owners, no user names) and a fixed modification time,
// so the same tree gives the same image digest; or an existing uncompressed
// layer tarball given with -layer. hack/image.sh uses it for the cluster's
// pause and CoreDNS images and for the meshd and proxy images.
//
// Built by `bash hack/tools.sh image` from the Go module proxy.
package main

import (
	"archive/tar"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// list is a repeatable string flag.
type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: image (-rootfs DIR | -layer TAR) -tag REF -out FILE [-entrypoint ARG]... [-cmd ARG]... [-user U[:G]] [-env K=V]... [-workdir DIR]")
		fs.PrintDefaults()
	}
	var entrypoint, cmd, env list
	rootfs := fs.String("rootfs", "", "directory whose tree becomes the image's only layer (owners 0:0)")
	layerTar := fs.String("layer", "", "an uncompressed layer tarball to use as is, instead of -rootfs")
	tag := fs.String("tag", "", "image reference written into the archive, e.g. ghcr.io/meshd/meshd:dev (required)")
	out := fs.String("out", "", "docker-archive tarball to write (required)")
	fs.Var(&entrypoint, "entrypoint", "entrypoint argument; repeat for each argument")
	fs.Var(&cmd, "cmd", "default command argument (after the entrypoint); repeat for each argument")
	fs.Var(&env, "env", "KEY=VALUE in the image's environment; repeatable (PATH defaults to the usual one)")
	user := fs.String("user", "", "user the container runs as, UID or UID:GID (numeric)")
	workdir := fs.String("workdir", "", "working directory (absolute)")
	arch := fs.String("arch", runtime.GOARCH, "image architecture")
	epoch := fs.Int64("epoch", sourceDateEpoch(), "modification and creation time, in Unix seconds (default $SOURCE_DATE_EPOCH or 0)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	case (*rootfs == "") == (*layerTar == ""):
		return fmt.Errorf("%w: give exactly one of -rootfs and -layer", errUsage)
	case *tag == "":
		return fmt.Errorf("%w: -tag is required", errUsage)
	case *out == "":
		return fmt.Errorf("%w: -out is required", errUsage)
	case *workdir != "" && !strings.HasPrefix(*workdir, "/"):
		return fmt.Errorf("%w: -workdir %q is not absolute", errUsage, *workdir)
	}
	if *user != "" {
		if err := checkUser(*user); err != nil {
			return fmt.Errorf("%w: -user: %v", errUsage, err)
		}
	}
	for _, e := range env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return fmt.Errorf("%w: -env %q is not KEY=VALUE", errUsage, e)
		}
	}
	ref, err := name.NewTag(*tag, name.WeakValidation)
	if err != nil {
		return fmt.Errorf("-tag %q: %v", *tag, err)
	}
	mtime := time.Unix(*epoch, 0).UTC()

	layerPath := *layerTar
	if *rootfs != "" {
		tmp, err := os.CreateTemp(filepath.Dir(*out), ".layer-*.tar")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		if err := tarDir(tmp, *rootfs, mtime); err != nil {
			tmp.Close()
			return fmt.Errorf("tar %s: %v", *rootfs, err)
		}
		if err := tmp.Close(); err != nil {
			return err
		}
		layerPath = tmp.Name()
	}
	layer, err := tarball.LayerFromFile(layerPath)
	if err != nil {
		return fmt.Errorf("layer %s: %v", layerPath, err)
	}
	src := *layerTar
	if src == "" {
		src = *rootfs
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: mtime},
			CreatedBy: "meshd tools/image from " + filepath.Base(filepath.Clean(src)),
		},
	})
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", *arch
	cf.Created = v1.Time{Time: mtime}
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = cmd
	cf.Config.User = *user
	cf.Config.WorkingDir = *workdir
	cf.Config.Env = withPath(env)
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	tmpOut := *out + ".tmp"
	if err := tarball.WriteToFile(tmpOut, ref, img); err != nil {
		os.Remove(tmpOut)
		return fmt.Errorf("write %s: %v", *out, err)
	}
	if err := os.Rename(tmpOut, *out); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	size, _ := layer.Size()
	fmt.Fprintf(stderr, "image: wrote %s (%s, %s, layer %d bytes compressed)\n", *out, *tag, d, size)
	return nil
}

func sourceDateEpoch() int64 {
	n, err := strconv.ParseInt(os.Getenv("SOURCE_DATE_EPOCH"), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func checkUser(u string) error {
	uid, gid, hasGID := strings.Cut(u, ":")
	if _, err := strconv.ParseUint(uid, 10, 32); err != nil {
		return fmt.Errorf("%q: the user must be a numeric UID (the image has no /etc/passwd)", u)
	}
	if hasGID {
		if _, err := strconv.ParseUint(gid, 10, 32); err != nil {
			return fmt.Errorf("%q: the group must be a numeric GID", u)
		}
	}
	return nil
}

// withPath returns env with the default PATH first unless env sets PATH.
func withPath(env []string) []string {
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			return env
		}
	}
	return append([]string{defaultPath}, env...)
}

// tarDir writes the tree under root as an uncompressed tar: paths relative
// to root in lexical order, every entry owned by 0:0 with no owner names,
// modes as on disk (setuid, setgid and sticky bits kept), mtime fixed.
// Regular files, directories and symbolic links only; hard links are stored
// as separate copies.
func tarDir(w io.Writer, root string, mtime time.Time) error {
	st, err := os.Stat(root)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", root)
	}
	var paths []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != root {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		var link string
		switch m := fi.Mode(); {
		case m.IsRegular(), m.IsDir():
		case m&fs.ModeSymlink != 0:
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unsupported file type %v (regular files, directories and symlinks only)", p, m.Type())
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return fmt.Errorf("%s: %v", p, err)
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = mtime, time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %v", p, err)
		}
		if fi.Mode().IsRegular() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			n, err := io.Copy(tw, f)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %v", p, err)
			}
			if n != fi.Size() {
				return fmt.Errorf("%s changed while being read", p)
			}
		}
	}
	return tw.Close()
}
