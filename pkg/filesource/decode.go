package filesource

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/socklb/socklb/pkg/lb"
)

// Errors a *DocumentError wraps, for callers that branch on the reason.
var (
	// ErrMalformed: the document is not valid YAML, not a mapping, lacks
	// apiVersion, kind or metadata.name, or does not fit the Go type of its kind.
	ErrMalformed = errors.New("malformed document")
	// ErrUnsupportedKind: the document is a Kubernetes object of a kind other
	// than v1 Service or discovery.k8s.io/v1 EndpointSlice (or a List of them).
	ErrUnsupportedKind = errors.New("unsupported kind")
	// ErrDuplicate: a later document holds an object with the same kind,
	// namespace and name as an earlier one. The later one is used.
	ErrDuplicate = errors.New("duplicate object")
)

// DocumentError is a problem with one document of the input. The document (or,
// inside a List, the item) it names was skipped; for ErrDuplicate the earlier
// object was dropped in favour of the one in this document.
type DocumentError struct {
	// Index is the 1-based number of the document: the count of documents
	// the YAML splitter returned so far, including empty ones (only comments
	// or blank lines between two `---`).
	Index int
	// Line is the 1-based line of the file where the document's content
	// starts (leading separators, blank lines and comment lines skipped).
	// Line numbers inside Err ("yaml: line 3: ...") count from this line.
	Line int
	// ErrLine is the line of the file the YAML parser or splitter complained
	// about, or 0 when Err names none.
	ErrLine int
	// Object names what the document (or item) holds, "Kind namespace/name",
	// as far as it could be read out of a document that did not decode: a
	// best effort for the logs, empty when nothing could be found.
	Object string
	Err    error

	// gvk is the apiVersion and kind the decoder saw, for ErrUnsupportedKind.
	gvk schema.GroupVersionKind
}

func (e *DocumentError) Error() string {
	return fmt.Sprintf("document %d (line %d): %v", e.Index, e.Line, e.Err)
}

func (e *DocumentError) Unwrap() error { return e.Err }

// deserializer decodes JSON or YAML into the versioned Go types, without
// conversion or defaulting: what the file says is what the model gets.
var deserializer = scheme.Codecs.UniversalDeserializer()

// Decode reads every YAML document of r, as `kubectl apply -f` takes them.
// Documents that fail to decode, or hold a kind other than Service or
// EndpointSlice (a v1 List, ServiceList or EndpointSliceList of those is
// accepted), are reported as *DocumentError and skipped; the rest is returned
// in file order. Empty documents are skipped silently. An object without a
// namespace gets "default". When two documents hold the same object (kind,
// namespace, name), the later one wins and an ErrDuplicate is reported.
//
// If r itself fails, Decode returns what it could not read as a single error
// that is not a *DocumentError, and an empty Input.
//
// Decode reports and goes on, for tools that want to see everything; the file
// source is stricter and refuses a file with any malformed document (see
// parseContent).
func Decode(r io.Reader) (lb.Input, []error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return lb.Input{}, []error{fmt.Errorf("read: %w", err)}
	}
	return decodeBytes(data)
}

// countingReader counts the bytes read through it, so that together with
// bufio.Reader.Buffered we know how far the YAML splitter has consumed.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

var (
	newline   = []byte("\n")
	separator = []byte("---")
)

// decodeBytes splits data with apimachinery's YAMLReader (the splitter kubectl
// uses) and decodes each document. The splitter consumes whole lines, so the
// bytes consumed by each Read are exactly the lines of that document plus its
// leading and trailing separators; counting newlines in them gives the line
// numbers the splitter itself does not report.
func decodeBytes(data []byte) (lb.Input, []error) {
	c := split(data)
	return c.in, c.errs
}

// split decodes every document of data into a collector.
func split(data []byte) *collector {
	cr := &countingReader{r: bytes.NewReader(data)}
	br := bufio.NewReader(cr)
	yr := utilyaml.NewYAMLReader(br)

	c := &collector{seen: map[objectKey]origin{}}
	var (
		off   int // bytes consumed by the splitter so far
		line  = 1 // line number at off
		index int // documents returned by the splitter so far
	)
	for {
		doc, err := yr.Read()
		end := cr.n - br.Buffered()
		if end < off || end > len(data) { // cannot happen with a bytes.Reader; never loop or panic on it
			c.errs = append(c.errs, &DocumentError{Index: index + 1, Line: line, Err: fmt.Errorf("%w: splitter lost its position", ErrMalformed)})
			break
		}
		seg := data[off:end]
		segLine := line
		line += bytes.Count(seg, newline)
		off = end
		if errors.Is(err, io.EOF) {
			break
		}
		index++
		if err != nil {
			// An invalid separator ("--- foo"): the splitter drops the lines
			// it had gathered for this document and goes on after that line.
			start := segLine + countLeading(seg, isSeparator)
			sepLine := segLine + bytes.Count(bytes.TrimSuffix(seg, newline), newline)
			if start > sepLine {
				start = sepLine
			}
			c.errs = append(c.errs, &DocumentError{Index: index, Line: start, ErrLine: sepLine,
				Object: objectName(identify(seg)), Err: fmt.Errorf("%w: line %d: %w", ErrMalformed, sepLine, err)})
			if len(seg) == 0 { // no progress: give up rather than spin
				break
			}
			continue
		}
		// The splitter strips the separators; the leading blank and comment
		// lines are dropped here so that Line is where the object begins.
		skipped := countLeading(doc, isBlankOrComment)
		body := dropLines(doc, skipped)
		at := origin{index: index, line: segLine + countLeading(seg, isSeparator) + skipped}
		// A last line without its newline ("---#0" at the end) reaches the
		// document unstripped: the object is on a line of the segment.
		at.line = min(at.line, segLine+max(bytes.Count(bytes.TrimSuffix(seg, newline), newline), 0))
		c.document(at, body)
	}
	return c
}

// countLeading returns how many leading lines of b satisfy pred.
func countLeading(b []byte, pred func([]byte) bool) int {
	n := 0
	for len(b) > 0 {
		l, rest, _ := bytes.Cut(b, newline)
		if !pred(l) {
			break
		}
		n++
		b = rest
	}
	return n
}

// dropLines returns b without its first n lines.
func dropLines(b []byte, n int) []byte {
	for ; n > 0 && len(b) > 0; n-- {
		_, b, _ = bytes.Cut(b, newline)
	}
	return b
}

// isSeparator matches the lines YAMLReader treats as document separators
// (or rejects as invalid ones): anything starting with "---".
func isSeparator(l []byte) bool { return bytes.HasPrefix(l, separator) }

func isBlankOrComment(l []byte) bool {
	l = bytes.TrimSpace(l)
	return len(l) == 0 || l[0] == '#'
}

// origin is where an object came from.
type origin struct {
	index, line int
}

type objectKey struct {
	kind, namespace, name string
}

// collector accumulates the objects and errors of one input.
type collector struct {
	in   lb.Input
	errs []error
	// emptyLists counts the documents that are a v1 List with no items: the
	// explicit way to say "no Services" (see parseContent).
	emptyLists int
	seen       map[objectKey]origin
	// pos is the position of each object in in.Services or in.EndpointSlices,
	// so that a duplicate replaces the earlier object in place.
	pos map[objectKey]int
}

func (c *collector) fail(at origin, object string, err error) {
	c.errs = append(c.errs, &DocumentError{Index: at.index, Line: at.line, Object: object, Err: err})
}

// failKind reports an object of a kind that is not read.
func (c *collector) failKind(at origin, object string, gvk schema.GroupVersionKind, err error) {
	c.errs = append(c.errs, &DocumentError{Index: at.index, Line: at.line, Object: object, Err: err, gvk: gvk})
}

// document decodes one document and adds what it holds.
func (c *collector) document(at origin, doc []byte) {
	obj, derr := decodeObject(doc)
	if derr != nil {
		de := &DocumentError{Index: at.index, Line: at.line, Object: derr.object, Err: derr.err, gvk: derr.gvk}
		if n := yamlErrLine(derr.err); n > 0 {
			de.ErrLine = at.line + n - 1 // the parser counts from the document's first line
		}
		c.errs = append(c.errs, de)
		return
	}
	if obj == nil { // empty document
		return
	}
	if c.add(at, obj, "") {
		return
	}
	if l, ok := obj.(*corev1.List); ok && len(l.Items) == 0 {
		c.emptyLists++
		return
	}
	// A list: decode each item on its own, so one bad item spoils only itself.
	var (
		items []runtime.Object
		raws  []runtime.RawExtension // for a v1 List: items still to decode
	)
	switch l := obj.(type) {
	case *corev1.List:
		raws = l.Items
		for _, r := range raws {
			items = append(items, r.Object) // nil unless set by the caller; decoded below
		}
	case *corev1.ServiceList:
		for i := range l.Items {
			items = append(items, &l.Items[i])
		}
	case *discoveryv1.EndpointSliceList:
		for i := range l.Items {
			items = append(items, &l.Items[i])
		}
	default:
		gvk := obj.GetObjectKind().GroupVersionKind()
		c.failKind(at, nameOf(gvk, obj), gvk, unsupported(gvk))
		return
	}
	for i, item := range items {
		prefix := fmt.Sprintf("item %d: ", i+1)
		if item == nil && i < len(raws) {
			o, derr := decodeObject(raws[i].Raw)
			if derr == nil && o == nil {
				derr = &decodeError{err: fmt.Errorf("%w: empty item", ErrMalformed)}
			}
			if derr != nil {
				c.failKind(at, derr.object, derr.gvk, fmt.Errorf("%s%w", prefix, derr.err))
				continue
			}
			item = o
		}
		if item == nil {
			continue
		}
		if c.add(at, item, prefix) {
			continue
		}
		gvk := item.GetObjectKind().GroupVersionKind()
		err := unsupported(gvk)
		if isList(item) {
			err = fmt.Errorf("%w: %s inside a list", ErrUnsupportedKind, describe(gvk))
		}
		c.failKind(at, nameOf(gvk, item), gvk, fmt.Errorf("%s%w", prefix, err))
	}
}

// nameOf names a decoded object for the logs.
func nameOf(gvk schema.GroupVersionKind, obj runtime.Object) string {
	if m, ok := obj.(metav1.Object); ok {
		return objectName("", gvk.Kind, m.GetNamespace(), m.GetName())
	}
	return objectName("", gvk.Kind, "", "")
}

func isList(obj runtime.Object) bool {
	switch obj.(type) {
	case *corev1.List, *corev1.ServiceList, *discoveryv1.EndpointSliceList:
		return true
	}
	return false
}

// add adds obj if it is a Service or an EndpointSlice, reporting whether it
// was one. prefix goes in front of errors (the item of a list).
func (c *collector) add(at origin, obj runtime.Object, prefix string) bool {
	switch o := obj.(type) {
	case *corev1.Service:
		o.APIVersion, o.Kind = "v1", "Service"
		if k, ok := c.key(at, "Service", &o.ObjectMeta, prefix); ok {
			if i, dup := c.pos[k]; dup {
				c.in.Services[i] = o
			} else {
				c.setPos(k, len(c.in.Services))
				c.in.Services = append(c.in.Services, o)
			}
		}
		return true
	case *discoveryv1.EndpointSlice:
		o.APIVersion, o.Kind = "discovery.k8s.io/v1", "EndpointSlice"
		if k, ok := c.key(at, "EndpointSlice", &o.ObjectMeta, prefix); ok {
			if i, dup := c.pos[k]; dup {
				c.in.EndpointSlices[i] = o
			} else {
				c.setPos(k, len(c.in.EndpointSlices))
				c.in.EndpointSlices = append(c.in.EndpointSlices, o)
			}
		}
		return true
	}
	return false
}

func (c *collector) setPos(k objectKey, i int) {
	if c.pos == nil {
		c.pos = map[objectKey]int{}
	}
	c.pos[k] = i
}

// key defaults the namespace, checks the name and reports a duplicate. It
// returns false if the object must be skipped.
func (c *collector) key(at origin, kind string, meta metaLike, prefix string) (objectKey, bool) {
	if meta.GetNamespace() == "" {
		meta.SetNamespace(corev1.NamespaceDefault)
	}
	if meta.GetName() == "" {
		c.fail(at, objectName("", kind, meta.GetNamespace(), ""), fmt.Errorf("%s%w: %s has no metadata.name", prefix, ErrMalformed, kind))
		return objectKey{}, false
	}
	k := objectKey{kind: kind, namespace: meta.GetNamespace(), name: meta.GetName()}
	if prev, dup := c.seen[k]; dup {
		c.fail(at, objectName("", kind, k.namespace, k.name), fmt.Errorf("%s%w: %s %s/%s replaces the one in document %d (line %d)",
			prefix, ErrDuplicate, kind, k.namespace, k.name, prev.index, prev.line))
	}
	c.seen[k] = at
	return k, true
}

type metaLike interface {
	GetNamespace() string
	SetNamespace(string)
	GetName() string
}

// decodeError is why decodeObject failed, with what could be read of the
// object (for the logs) and, for ErrUnsupportedKind, its kind.
type decodeError struct {
	err    error
	object string
	gvk    schema.GroupVersionKind
}

// decodeObject decodes one document (YAML or JSON). It returns nil, nil for
// an empty document.
func decodeObject(doc []byte) (runtime.Object, *decodeError) {
	js, err := utilyaml.ToJSON(doc)
	if err != nil {
		return nil, &decodeError{err: fmt.Errorf("%w: %w", ErrMalformed, err), object: objectName(identify(doc))}
	}
	js = bytes.TrimSpace(js)
	if len(js) == 0 || bytes.Equal(js, []byte("null")) {
		return nil, nil
	}
	if js[0] != '{' {
		return nil, &decodeError{err: fmt.Errorf("%w: not an object but %s", ErrMalformed, jsonType(js[0]))}
	}
	obj, gvk, err := deserializer.Decode(js, nil, nil)
	if err == nil {
		return obj, nil
	}
	// Read the identity from the JSON rather than parse the YAML again.
	var de decodeError
	if id, ok := identityOf(js); ok {
		de.object = objectName(id[0], id[1], id[2], id[3])
	} else { // JSON the YAML parser let through as it was, and broken
		de.object = objectName(identify(doc))
	}
	switch {
	case runtime.IsMissingKind(err):
		de.err = fmt.Errorf("%w: object has no kind", ErrMalformed)
	case runtime.IsMissingVersion(err):
		de.err = fmt.Errorf("%w: object has no apiVersion", ErrMalformed)
	case runtime.IsNotRegisteredError(err) && gvk != nil:
		de.err, de.gvk = unsupported(*gvk), *gvk
	default:
		de.err = fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil, &de
}

func unsupported(gvk schema.GroupVersionKind) error {
	return fmt.Errorf("%w: %s (want apiVersion v1 kind Service or apiVersion discovery.k8s.io/v1 kind EndpointSlice)",
		ErrUnsupportedKind, describe(gvk))
}

func describe(gvk schema.GroupVersionKind) string {
	return fmt.Sprintf("apiVersion %s kind %s", gvk.GroupVersion(), gvk.Kind)
}

func jsonType(b byte) string {
	switch {
	case b == '[':
		return "a list"
	case b == '"':
		return "a string"
	case b == 't' || b == 'f':
		return "a boolean"
	default:
		return "a number"
	}
}
