package kubelet

import "testing"

func TestExpand(t *testing.T) {
	env := map[string]string{"POD_IP": "198.18.0.5", "EMPTY": ""}
	for in, want := range map[string]string{
		"$(POD_IP):8080":       "198.18.0.5:8080",
		"$$(POD_IP)":           "$(POD_IP)",
		"a$$b":                 "a$b",
		"$(UNKNOWN)/$(POD_IP)": "$(UNKNOWN)/198.18.0.5",
		"[$(EMPTY)]":           "[]",
		"cost $5":              "cost $5",
		"$(unclosed":           "$(unclosed",
		"end$":                 "end$",
		"$$$(POD_IP)":          "$198.18.0.5",
		"$$$$(POD_IP)":         "$$(POD_IP)",
	} {
		if got := Expand(in, env); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}
