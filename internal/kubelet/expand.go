// Package kubelet does what the kubelet does to a pod's containers before
// it starts them, for meshd's harnesses that run sidecars without one (the
// netns lab, tests of a single Envoy): expanding $(VAR) references in
// container arguments.
package kubelet

import "strings"

// Expand expands a container argument as the kubelet does: $(NAME)
// becomes env[NAME] when env has it and stays as written otherwise, "$$"
// becomes "$", and any other '$' stays.
func Expand(arg string, env map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(arg); i++ {
		if arg[i] != '$' || i+1 == len(arg) {
			b.WriteByte(arg[i])
			continue
		}
		switch next := arg[i+1]; {
		case next == '$':
			b.WriteByte('$')
			i++
		case next == '(':
			end := strings.IndexByte(arg[i+2:], ')')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name := arg[i+2 : i+2+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(arg[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}
