package filesource

import (
	"cmp"
	"errors"
	"slices"

	"github.com/socklb/socklb/pkg/lb"
)

// The file source's rules. The file is the whole desired state: applying part
// of it deletes every Service whose document is broken, so a file is applied
// whole or not at all.
//
//   - Any malformed document (bad YAML, wrong types, no name, a bad
//     separator) refuses the file.
//   - A Service, EndpointSlice or List at an apiVersion socklb does not read
//     refuses the file too: skipping it would remove an object the user means.
//   - Objects of other kinds (a ConfigMap in a kubectl manifest) are skipped.
//   - Duplicates: the later object wins, as with Decode.
//   - A file with no Service and no EndpointSlice is refused (an empty or
//     truncated file is far more often an accident than a wish), unless all
//     its objects are empty v1 Lists: that is how one asks for no Services.

// maxNames caps the object names one log line lists.
const maxNames = 10

// readKinds are the kinds socklb reads; one of them it cannot use is an error
// in the file, not an object to skip.
var readKinds = []string{"Service", "EndpointSlice", "List", "ServiceList", "EndpointSliceList"}

// kindCount is how many objects of one apiVersion and kind were skipped.
type kindCount struct {
	apiVersion, kind string
	count            int
}

// content is a file that passed the rules.
type content struct {
	in lb.Input
	// skipped are the unsupported kinds, sorted by apiVersion and kind.
	skipped []kindCount
	// duplicates names the objects a later document replaced, in file order.
	duplicates []string
}

// refusal says why a file was refused.
type refusal struct {
	// bad are the documents that broke the file, in file order; empty when
	// the file was refused for having no objects.
	bad []*DocumentError
	// skipped are the unsupported kinds the file held (none if bad is set).
	skipped []kindCount
}

// parseContent decodes data and applies the rules: either the content to
// apply or the reason to refuse it.
func parseContent(data []byte) (content, *refusal) {
	c := split(data)
	var (
		out   = content{in: c.in}
		bad   []*DocumentError
		kinds = map[kindCount]int{}
	)
	for _, err := range c.errs {
		var de *DocumentError
		if !errors.As(err, &de) { // decodeBytes returns only *DocumentError; be safe anyway
			de = &DocumentError{Err: err}
		}
		switch {
		case errors.Is(de, ErrDuplicate):
			out.duplicates = append(out.duplicates, de.Object)
		case errors.Is(de, ErrUnsupportedKind) && !slices.Contains(readKinds, de.gvk.Kind):
			kinds[kindCount{apiVersion: de.gvk.GroupVersion().String(), kind: de.gvk.Kind}]++
		default:
			bad = append(bad, de)
		}
	}
	for k, n := range kinds {
		k.count = n
		out.skipped = append(out.skipped, k)
	}
	slices.SortFunc(out.skipped, func(a, b kindCount) int {
		return cmp.Or(cmp.Compare(a.apiVersion, b.apiVersion), cmp.Compare(a.kind, b.kind))
	})
	if len(bad) > 0 {
		return content{}, &refusal{bad: bad}
	}
	if len(c.in.Services)+len(c.in.EndpointSlices) == 0 && (c.emptyLists == 0 || len(out.skipped) > 0) {
		return content{}, &refusal{skipped: out.skipped}
	}
	return out, nil
}
