package translate

import (
	"testing"

	"github.com/meshd/meshd/internal/iptables"
)

// TestAppSourceAddressMatchesInterception: the inbound clusters forward to
// the app from the address the interception rules let through; with any
// other, a forwarded connection to the pod's address would be sent back to
// the inbound listener.
func TestAppSourceAddressMatchesInterception(t *testing.T) {
	if appSourceAddress != iptables.AppSourceAddress {
		t.Errorf("inbound clusters bind %s, the iptables rules let %s through", appSourceAddress, iptables.AppSourceAddress)
	}
}
