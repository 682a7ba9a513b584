package model

import (
	"strings"
	"testing"
)

// TestCompareKey: comparing a key's parts with a key is comparing the key
// built from them, for names with dots, prefixes and bytes on either side
// of '.'.
func TestCompareKey(t *testing.T) {
	parts := []string{"", "a", "a.b", "a-", "a/", "ab", "b", "web", "web.x", "web-0", "we"}
	for _, name := range parts {
		for _, ns := range parts {
			for _, k1 := range parts {
				for _, k2 := range parts {
					for _, key := range []string{k1, k1 + "." + k2, k1 + "-" + k2, k1 + "/" + k2} {
						if got, want := compareKey(name, ns, key), strings.Compare(name+"."+ns, key); got != want {
							t.Fatalf("compareKey(%q, %q, %q) = %d, want %d", name, ns, key, got, want)
						}
					}
				}
			}
		}
	}
}
