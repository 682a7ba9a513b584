package k8s

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshd/meshd/model"
)

// TestNamesAsTheAPIServer: the name checks the conversion makes accept
// exactly what the apiserver's validation does.
func TestNamesAsTheAPIServer(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	names := []string{"", "a", "A", "0", "-", "a-", "-a", "a-b", "a--b", "0a", "a.b", "a..b", ".a", "a.", "a_b", "a b", "ä", "a\xffb",
		"a|b", "a/b", "*", "x.y-z.0", long(63), long(64), long(63) + "." + long(63), long(100), long(253), long(254), long(200) + ".-b"}
	for _, s := range names {
		for _, c := range []struct {
			what string
			got  bool
			want []string
		}{
			{"label", model.IsDNSLabel(s), validation.IsDNS1123Label(s)},
			{"1035 label", isDNS1035Label(s), validation.IsDNS1035Label(s)},
			{"subdomain", isDNSSubdomain(s), validation.IsDNS1123Subdomain(s)},
		} {
			if c.got != (len(c.want) == 0) {
				t.Errorf("%s %q: got %v, the apiserver says %v", c.what, s, c.got, c.want)
			}
		}
	}
}
