package xds

import (
	"bytes"
	"errors"
	"sync/atomic"
	"unicode/utf8"
	"unique"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds/resource"
)

// Decoding a SotW request against the stream's previous one.
//
// A SotW request names every resource of its type the proxy wants, and an
// ACK repeats them: with 1,000 proxies each naming 1,000 endpoint sets, an
// endpoint change made meshd decode a million strings, a quarter of its
// CPU in that phase, plus the collector's work on them. A stream's requests
// of a type name the same resources in the same order, so each name is
// compared with the one at its place in the previous request and takes
// that string (and a request naming exactly the same takes the previous
// slice): an ACK allocates nothing for its names. A name not found there
// is checked as protobuf checks it (valid UTF-8) and takes its canonical
// copy (unique.Make), which thousands of proxies naming the same resources
// share; the collector drops canonical copies no one holds, so a client
// naming junk keeps nothing alive. A new list is shared the same way, with
// every stream naming the same resources (see lists.go). Where the names
// came as one run of short fields, as every client sends them, the stream
// also holds that run's bytes (one copy for every stream naming the same
// list), and an ACK whose run is the same bytes names the same without a
// comparison per name (4 us instead of 9 for 1,000 names).

// sotwRequest is what a stream hands the codec to decode a SotW request
// into: the message, and the stream's previous names by type.
type sotwRequest struct {
	req  *discoveryv3.DiscoveryRequest
	prev *prevNames
}

// prevNames are a stream's last request's names, by served type (a type
// meshd does not serve is decoded without them, so a client inventing type
// URLs makes the stream hold nothing more). Used by the stream's one
// receiving goroutine.
type prevNames struct {
	names [resource.NumTypes][]string
	// runs are, where known, the encodings of names' run of fields as
	// decodeSotwRun reads them (shared by every stream holding the same
	// list; see sharedLists.shareRun): an ACK whose run is these bytes
	// names exactly names, which one comparison of the bytes tells.
	runs [resource.NumTypes]*[]byte
}

const (
	requestResourceNames = 3 // DiscoveryRequest.resource_names
	requestTypeURL       = 4 // DiscoveryRequest.type_url
)

// decodeSotwRequest decodes b into r.req, as proto.Unmarshal would, taking
// the names from r.prev where they repeat them (see above). Anything it
// does not expect (a malformed message, a field of the wrong wire type, a
// name that is not UTF-8) is left to proto.Unmarshal, with its errors.
func decodeSotwRequest(b []byte, r sotwRequest) error {
	if ok, err := decodeSotwRun(b, r); ok {
		return err
	}
	// First the rest of the message and the type (which protobuf writes
	// after the names), then the names against that type's previous ones.
	var rest, typeURL []byte
	count := 0
	err := eachField(b, func(num protowire.Number, typ protowire.Type, field, value []byte) bool {
		if (num == requestResourceNames || num == requestTypeURL) && typ != protowire.BytesType {
			return false
		}
		if num == requestResourceNames {
			count++
			return true
		}
		if num == requestTypeURL {
			typeURL = value
		}
		rest = append(rest, field...)
		return true
	})
	if err != nil {
		return proto.Unmarshal(b, r.req)
	}
	slot, prev := r.prevOf(typeURL)
	names := namesOf{prev: prev, count: count}
	if eachField(b, func(num protowire.Number, _ protowire.Type, _, value []byte) bool {
		return num != requestResourceNames || names.add(value)
	}) != nil {
		return proto.Unmarshal(b, r.req)
	}
	return r.finish(rest, slot, &names, nil)
}

// prevOf is the place of the type named typeURL and the stream's previous
// request's names of that type (none for a type meshd does not serve).
func (r sotwRequest) prevOf(typeURL []byte) (slot int, prev []string) {
	slot = resource.Order(string(typeURL))
	if slot < resource.NumTypes {
		prev = r.prev.names[slot]
	}
	return slot, prev
}

// finish decodes rest (the request but its names) into r.req, gives it
// names' result (shared with every stream naming the same when new) and
// keeps that as the type's previous names, with run, the encoding of the
// names' run of fields if decodeSotwRun read them (nil otherwise).
func (r sotwRequest) finish(rest []byte, slot int, names *namesOf, run []byte) error {
	if err := proto.Unmarshal(rest, r.req); err != nil {
		return err
	}
	r.req.ResourceNames = names.result()
	served := slot < resource.NumTypes
	switch {
	case served && run != nil && (names.fresh() || r.prev.runs[slot] == nil):
		r.req.ResourceNames, r.prev.runs[slot] = lists.shareRun(r.req.ResourceNames, run)
	case names.fresh():
		r.req.ResourceNames = lists.share(r.req.ResourceNames)
	}
	if served {
		if run == nil {
			r.prev.runs[slot] = nil
		}
		r.prev.names[slot] = r.req.ResourceNames
	}
	return nil
}

// namesTag is a resource name's tag (resource_names, length-delimited).
const namesTag = requestResourceNames<<3 | byte(protowire.BytesType)

// decodeSotwRun is decodeSotwRequest for the request every client sends:
// its names one run of fields, each with a one-byte tag and length (names
// under 128 bytes), the other fields before or after them. It walks the
// run without a call per name to count the names, then compares the whole
// run with the previous request's (prevNames.runs) or, when that differs
// or is not known, reads the names against the type's previous ones, as a
// comparison of the bytes at hand. ok is false, with nothing decoded, for
// any other request, which decodeSotwRequest reads field by field.
func decodeSotwRun(b []byte, r sotwRequest) (ok bool, err error) {
	var rest, typeURL []byte
	start, end, count := -1, -1, 0
	for i := 0; i < len(b); {
		if b[i] == namesTag {
			if start >= 0 {
				return false, nil // a second run
			}
			start = i
			for i+1 < len(b) && b[i] == namesTag && b[i+1] < 0x80 && i+2+int(b[i+1]) <= len(b) {
				i += 2 + int(b[i+1])
				count++
			}
			end = i
			if i < len(b) && b[i] == namesTag {
				return false, nil // a long name, or one cut short
			}
			continue
		}
		num, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 || num == requestResourceNames || (num == requestTypeURL && typ != protowire.BytesType) {
			return false, nil
		}
		m := protowire.ConsumeFieldValue(num, typ, b[i+n:])
		if m < 0 {
			return false, nil
		}
		if num == requestTypeURL {
			typeURL, _ = protowire.ConsumeBytes(b[i+n:])
		}
		rest = append(rest, b[i:i+n+m]...)
		i += n + m
	}
	slot, prev := r.prevOf(typeURL)
	names := namesOf{prev: prev, count: count}
	var run []byte
	if start >= 0 {
		run = b[start:end]
	}
	if slot < resource.NumTypes && count == len(prev) {
		if known := r.prev.runs[slot]; known != nil && bytes.Equal(run, *known) {
			// The previous request's names, in the same encoding: an ACK.
			return true, r.finish(rest, slot, &names, run)
		}
	}
	for i := start; i < end; {
		v := b[i+2 : i+2+int(b[i+1])]
		i += 2 + len(v)
		if names.out == nil && names.n < len(prev) && prev[names.n] == string(v) {
			names.n++ // the common case of add, at hand
			continue
		}
		if !names.add(v) {
			return false, nil // not UTF-8: protobuf's error
		}
	}
	return true, r.finish(rest, slot, &names, run)
}

// errStop is eachField's error when its function stopped it.
var errStop = errors.New("stopped")

// eachField calls f with each field of the message b: its number, wire
// type, encoding (tag included) and, for a length-delimited field, its
// value. It fails when b is malformed or f returns false.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, field, value []byte) bool) error {
	for i := 0; i < len(b); {
		// The common case first: a length-delimited field of a one-byte
		// tag and a one-byte length (every resource name under 128 bytes).
		if t := b[i]; t < 0x80 && t>>3 != 0 && protowire.Type(t&7) == protowire.BytesType && i+1 < len(b) && b[i+1] < 0x80 {
			if end := i + 2 + int(b[i+1]); end <= len(b) {
				if !f(protowire.Number(t>>3), protowire.BytesType, b[i:end], b[i+2:end]) {
					return errStop
				}
				i = end
				continue
			}
		}
		num, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 {
			return protowire.ParseError(n)
		}
		var value []byte
		var m int
		if typ == protowire.BytesType {
			value, m = protowire.ConsumeBytes(b[i+n:])
		} else {
			m = protowire.ConsumeFieldValue(num, typ, b[i+n:])
		}
		if m < 0 {
			return protowire.ParseError(m)
		}
		if !f(num, typ, b[i:i+n+m], value) {
			return errStop
		}
		i += n + m
	}
	return nil
}

// namesOf makes a request's names one by one, taking prev's where they
// repeat them (prev itself when they all do).
type namesOf struct {
	prev  []string
	count int      // the names the request has
	out   []string // nil while every name so far is prev's
	n     int      // the names added
}

// add adds a name; it reports false when the name is not valid UTF-8.
func (ns *namesOf) add(b []byte) bool {
	i := ns.n
	ns.n++
	if i < len(ns.prev) && ns.prev[i] == string(b) {
		if ns.out != nil {
			ns.out[i] = ns.prev[i]
		}
		return true
	}
	if !utf8.Valid(b) {
		return false
	}
	if ns.out == nil {
		ns.out = make([]string, ns.count)
		copy(ns.out, ns.prev[:i])
	}
	ns.out[i] = unique.Make(string(b)).Value()
	return true
}

// fresh reports whether result is a new list rather than prev.
func (ns *namesOf) fresh() bool {
	return ns.out != nil || ns.count != len(ns.prev)
}

func (ns *namesOf) result() []string {
	switch {
	case ns.out != nil:
		return ns.out
	case ns.count == len(ns.prev):
		return ns.prev
	}
	return append([]string(nil), ns.prev[:ns.count]...)
}

const (
	deltaTypeURL     = 2 // DeltaDiscoveryRequest.type_url
	deltaSubscribe   = 3 // DeltaDiscoveryRequest.resource_names_subscribe
	deltaUnsubscribe = 4 // DeltaDiscoveryRequest.resource_names_unsubscribe
)

// lastSubscribed are, by served type, the names of the last delta request
// that subscribed to minShared or more (a proxy connecting, as a rule):
// the next such request is decoded against them, as a SotW request is
// against its stream's previous one. The proxies of a mesh subscribe to
// the same names in the same order (the order of the sets meshd sent
// them), so a connecting proxy's ~1,000 names are each a comparison with
// the last proxy's instead of a lookup of their canonical copy, and the
// list itself is the last proxy's when they all repeat it. Process-wide,
// as the canonical lists are (lists.go); never written once stored. A list
// is kept only up to maxLastSubscribed bytes of names: it is kept before
// the request is checked, and a client's junk must not pin more.
var lastSubscribed [resource.NumTypes]atomic.Pointer[[]string]

// maxLastSubscribed bounds the names' bytes of a list kept in
// lastSubscribed (a mesh of 10,000 services names ~500 KB of endpoint sets).
const maxLastSubscribed = 1 << 20

// decodeDeltaRequest decodes b into req as proto.Unmarshal would, each
// subscribed and unsubscribed name taken as its canonical copy
// (unique.Make) as it is read. A connecting proxy names ~1,000 resources
// of a type, the ones every other proxy names, and go-control-plane keeps
// them for the stream's life: decoded by protobuf, each was a new string
// (120 MB of garbage in a 1,000-proxy connect storm) that meshd then
// replaced by its canonical copy. A request subscribing to many names is
// decoded against the last such request of its type (lastSubscribed), and
// takes its list when it names the same. Anything it does not expect (a
// malformed message, a field of the wrong wire type, a name that is not
// UTF-8) is left to proto.Unmarshal, with its errors.
func decodeDeltaRequest(b []byte, req *discoveryv3.DeltaDiscoveryRequest) error {
	// First count the names (an ACK has none, and is left to protobuf as
	// it is), then read them and the rest of the message.
	subs, unsubs, subBytes := 0, 0, 0
	var typeURL []byte
	err := eachField(b, func(num protowire.Number, typ protowire.Type, _, value []byte) bool {
		if num == deltaTypeURL && typ == protowire.BytesType {
			typeURL = value
		}
		if num != deltaSubscribe && num != deltaUnsubscribe {
			return true
		}
		if typ != protowire.BytesType {
			return false
		}
		if num == deltaSubscribe {
			subs++
			subBytes += len(value)
		} else {
			unsubs++
		}
		return true
	})
	if err != nil || subs+unsubs == 0 {
		return proto.Unmarshal(b, req)
	}
	var rest []byte
	var last *atomic.Pointer[[]string]
	var prev []string
	if slot := resource.Order(string(typeURL)); slot < resource.NumTypes && subs >= minShared && subBytes <= maxLastSubscribed {
		last = &lastSubscribed[slot]
		if p := last.Load(); p != nil {
			prev = *p
		}
	}
	sub, unsub := namesOf{prev: prev, count: subs}, namesOf{count: unsubs}
	if eachField(b, func(num protowire.Number, _ protowire.Type, field, value []byte) bool {
		switch num {
		case deltaSubscribe:
			return sub.add(value)
		case deltaUnsubscribe:
			return unsub.add(value)
		default:
			rest = append(rest, field...)
		}
		return true
	}) != nil {
		return proto.Unmarshal(b, req)
	}
	if err := proto.Unmarshal(rest, req); err != nil {
		return err
	}
	if subs > 0 {
		req.ResourceNamesSubscribe = sub.result()
		if last != nil && sub.fresh() {
			names := lists.share(req.ResourceNamesSubscribe)
			req.ResourceNamesSubscribe = names
			last.Store(&names)
		}
	}
	if unsubs > 0 {
		req.ResourceNamesUnsubscribe = unsub.result()
	}
	return nil
}
