package k8s

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshd/meshd/model"
)

// TestNamesAsTheAPIServer: model's DNS-label check (egress scopes) accepts
// exactly what the apiserver's validation does (validNames uses the
// latter itself).
func TestNamesAsTheAPIServer(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	names := []string{"", "a", "A", "0", "-", "a-", "-a", "a-b", "a--b", "0a", "a.b", "a..b", ".a", "a.", "a_b", "a b", "ä", "a\xffb",
		"a|b", "a/b", "*", "x.y-z.0", long(63), long(64), long(63) + "." + long(63), long(100), long(253), long(254), long(200) + ".-b"}
	for _, s := range names {
		if got, want := model.IsDNSLabel(s), validation.IsDNS1123Label(s); got != (len(want) == 0) {
			t.Errorf("label %q: got %v, the apiserver says %v", s, got, want)
		}
	}
}
