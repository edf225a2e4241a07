package filesource

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// A document that failed to decode still has to be named in the log, or the
// user cannot tell which of 5 000 objects broke the file. identify reads the
// identity (apiVersion, kind, metadata.namespace, metadata.name) out of it as
// leniently as it can: a whole parse ignoring types, then a parse of only the
// lines that carry the identity, then a plain scan of those lines.

// identify returns what it can find of the identity of doc; every part may be
// empty. It never fails.
func identify(doc []byte) (apiVersion, kind, namespace, name string) {
	if js, err := utilyaml.ToJSON(doc); err == nil {
		if id, ok := identityOf(js); ok {
			return id[0], id[1], id[2], id[3]
		}
	}
	lines := identityLines(doc)
	if js, err := utilyaml.ToJSON(lines); err == nil {
		if id, ok := identityOf(js); ok {
			return id[0], id[1], id[2], id[3]
		}
	}
	return scanIdentity(lines, doc)
}

// identityOf reads the identity out of a JSON object without caring for the
// types of anything else, and without building the rest of it. ok is false
// if js is not an object.
func identityOf(js []byte) (id [4]string, ok bool) {
	var v struct {
		APIVersion any `json:"apiVersion"`
		Kind       any `json:"kind"`
		Metadata   any `json:"metadata"`
	}
	if js = bytes.TrimSpace(js); len(js) == 0 || js[0] != '{' || json.Unmarshal(js, &v) != nil {
		return id, false
	}
	str := func(v any) string {
		s, _ := v.(string)
		return s
	}
	id[0], id[1] = str(v.APIVersion), str(v.Kind)
	if meta, isMap := v.Metadata.(map[string]any); isMap {
		id[2], id[3] = str(meta["namespace"]), str(meta["name"])
	}
	return id, true
}

// identityLines returns the top-level apiVersion and kind lines of a YAML
// document and its metadata block (the metadata line and the indented lines
// after it), so that a syntax error elsewhere does not hide the identity.
func identityLines(doc []byte) []byte {
	var out []byte
	inMeta := false
	for len(doc) > 0 {
		var l []byte
		l, doc, _ = bytes.Cut(doc, newline)
		l = bytes.TrimSuffix(l, []byte("\r"))
		indented := len(l) > 0 && (l[0] == ' ' || l[0] == '\t')
		switch {
		case inMeta && (indented || isBlankOrComment(l)):
		case topKey(l, "metadata"):
			inMeta = true
		case topKey(l, "apiVersion") || topKey(l, "kind"):
			inMeta = false
		default:
			inMeta = false
			continue
		}
		out = append(append(out, l...), '\n')
	}
	return out
}

// topKey reports whether l is the top-level mapping key k.
func topKey(l []byte, k string) bool {
	rest, ok := bytes.CutPrefix(l, []byte(k))
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " \t")
	return len(rest) > 0 && rest[0] == ':'
}

// jsonKey matches `"key": "value"` in a JSON document that does not parse.
var jsonKey = regexp.MustCompile(`"(apiVersion|kind|name|namespace)"\s*:\s*"([^"\\]{0,253})"`)

// scanIdentity reads the identity out of lines (from identityLines) without
// a YAML parser: `key: value` at the top level and one level into metadata,
// block or flow style. For a JSON document it falls back to jsonKey on doc.
func scanIdentity(lines, doc []byte) (apiVersion, kind, namespace, name string) {
	metaIndent := -1
	for len(lines) > 0 {
		var l []byte
		l, lines, _ = bytes.Cut(lines, newline)
		if isBlankOrComment(l) {
			continue
		}
		if l[0] != ' ' && l[0] != '\t' {
			k, v, _ := strings.Cut(string(l), ":")
			switch strings.TrimSpace(k) {
			case "apiVersion":
				apiVersion = scalar(v)
			case "kind":
				kind = scalar(v)
			case "metadata":
				metaIndent = -1
				if f, ok := strings.CutPrefix(strings.TrimSpace(v), "{"); ok { // flow style: {name: a, namespace: b}
					f, _, _ = strings.Cut(f, "}")
					for _, kv := range strings.Split(f, ",") {
						k, v, _ := strings.Cut(kv, ":")
						namespace, name = metaField(strings.TrimSpace(k), scalar(v), namespace, name)
					}
				}
			}
			continue
		}
		indent := len(l) - len(bytes.TrimLeft(l, " \t"))
		if metaIndent < 0 {
			metaIndent = indent
		}
		if indent == metaIndent {
			k, v, _ := strings.Cut(string(l[indent:]), ":")
			namespace, name = metaField(strings.TrimSpace(k), scalar(v), namespace, name)
		}
	}
	if apiVersion == "" && kind == "" && name == "" {
		for _, m := range jsonKey.FindAllSubmatch(doc, -1) {
			switch v := string(m[2]); string(m[1]) {
			case "apiVersion":
				apiVersion = keepFirst(apiVersion, v)
			case "kind":
				kind = keepFirst(kind, v)
			case "namespace":
				namespace = keepFirst(namespace, v)
			case "name":
				name = keepFirst(name, v)
			}
		}
	}
	return apiVersion, kind, namespace, name
}

// keepFirst keeps the first value found: later ones are likely nested fields.
func keepFirst(have, v string) string {
	if have != "" {
		return have
	}
	return v
}

func metaField(k, v, namespace, name string) (string, string) {
	switch k {
	case "name":
		name = v
	case "namespace":
		namespace = v
	}
	return namespace, name
}

// scalar cleans a plain or quoted YAML scalar: trailing comment, spaces and
// quotes removed. Anything that looks like a collection or an anchor gives "".
func scalar(v string) string {
	v = strings.TrimSpace(v)
	if len(v) > 1 && (v[0] == '"' || v[0] == '\'') {
		if end := strings.IndexByte(v[1:], v[0]); end >= 0 {
			return v[1 : end+1]
		}
		return ""
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	if strings.ContainsAny(v, "[]{}&*!|>") {
		return ""
	}
	return v
}

// objectName formats an identity for the logs: "Service shop/web". The
// namespace defaults as the decoder defaults it. Empty if nothing is known.
func objectName(_, kind, namespace, name string) string {
	if kind == "" && name == "" {
		return ""
	}
	if kind == "" {
		kind = "object"
	}
	if name == "" {
		return kind + " (no name)"
	}
	if namespace == "" {
		namespace = corev1.NamespaceDefault
	}
	return kind + " " + namespace + "/" + name
}

// yamlLine finds the line a YAML parser error names ("yaml: line 3: ...").
var yamlLine = regexp.MustCompile(`yaml: line (\d+):`)

// yamlErrLine returns the line number in err's message, 0 if there is none.
func yamlErrLine(err error) int {
	m := yamlLine.FindStringSubmatch(err.Error())
	if m == nil {
		return 0
	}
	n, convErr := strconv.Atoi(m[1])
	if convErr != nil || n < 1 {
		return 0
	}
	return n
}
