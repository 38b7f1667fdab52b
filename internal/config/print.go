package config

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Mask is what YAML prints for a secret setting that is set. A field is a
// secret when its struct tag says secret:"true"; none is today, because the
// tokens file holds hashes and TLS keys are referenced by path (a path is
// not a secret: never tag one). A token or password added later must be.
const Mask = "*****"

// YAML renders c as a YAML config file, in field order, durations as
// strings ("30s", "10m") and secrets as Mask. Loading the output gives c
// back, except that a set secret comes back as Mask, which Load refuses.
// It is what hourglassd --print-config prints.
func (c Config) YAML() ([]byte, error) {
	return renderYAML(c)
}

// renderYAML renders any struct the way YAML renders Config.
func renderYAML(v any) ([]byte, error) {
	node, err := toNode(reflect.ValueOf(v))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(node); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// toNode builds the mapping for struct v. It goes by yaml tags like the
// decoder, but writes durations and secrets itself: yaml.v3 encodes a
// time.Duration as an integer of nanoseconds, which its own decoder then
// refuses.
func toNode(v reflect.Value) (*yaml.Node, error) {
	node := &yaml.Node{Kind: yaml.MappingNode}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, inline, skip := yamlName(f)
		if skip {
			continue
		}
		fv := v.Field(i)
		var val yaml.Node
		switch {
		case f.Tag.Get("secret") == "true" && !fv.IsZero():
			if err := val.Encode(Mask); err != nil {
				return nil, err
			}
		case fv.Type() == durationType:
			if err := val.Encode(formatDuration(time.Duration(fv.Int()))); err != nil {
				return nil, err
			}
		case fv.Kind() == reflect.Struct:
			sub, err := toNode(fv)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if inline {
				node.Content = append(node.Content, sub.Content...)
				continue
			}
			val = *sub
		case fv.Kind() == reflect.Slice && fv.Len() == 0:
			// "command: []" says "empty" more plainly than "command: null".
			val = yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle}
		default:
			if err := val.Encode(fv.Interface()); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
		}
		key := &yaml.Node{Kind: yaml.ScalarNode, Value: name}
		node.Content = append(node.Content, key, &val)
	}
	return node, nil
}

// formatDuration is time.Duration.String without the trailing zero units
// ("1m" rather than "1m0s"); time.ParseDuration reads both.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

// normalize makes an empty list nil, so that "command: []", an empty
// HOURGLASS_WORKERS_COMMAND and no setting at all give equal configs.
func normalize(dst any) {
	root := reflect.ValueOf(dst).Elem()
	settings, _ := settingsOf(root.Type()) // applyEnv has already checked
	for _, s := range settings {
		if v := root.FieldByIndex(s.index); v.Kind() == reflect.Slice && v.Len() == 0 {
			v.SetZero()
		}
	}
}

// checkNotMasked refuses a secret whose value is Mask: it came from printed
// output, and using it would fail later and more obscurely.
func checkNotMasked(dst any) error {
	root := reflect.ValueOf(dst).Elem()
	settings, err := settingsOf(root.Type())
	if err != nil {
		return err
	}
	for _, s := range settings {
		if v := root.FieldByIndex(s.index); s.secret && v.Kind() == reflect.String && v.String() == Mask {
			return invalid(s.key, "is the mask %s from printed config, not the secret itself", Mask)
		}
	}
	return nil
}
