package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// This file derives the list of settings from the Config struct itself, by
// its yaml tags, so that a new field gets its environment variable and its
// place in the printed config without being listed anywhere else.

// setting is one leaf of Config: a key a YAML file may set.
type setting struct {
	key    string // YAML key path: "timeouts.cancel_grace"
	env    string // its variable: "HOURGLASS_TIMEOUTS_CANCEL_GRACE"
	index  []int  // reflect field index path from the root struct
	typ    reflect.Type
	secret bool // tagged secret:"true": masked when printed
}

var durationType = reflect.TypeFor[time.Duration]()

// settingsOf lists the leaves of struct type t in field order. It fails on a
// field whose type cannot be read from an environment variable, or on two
// keys that would share one variable name: both are mistakes in Config.
func settingsOf(t reflect.Type) ([]setting, error) {
	var out []setting
	if err := collect(t, "", nil, &out); err != nil {
		return nil, err
	}
	byEnv := make(map[string]string, len(out))
	for _, s := range out {
		if other, ok := byEnv[s.env]; ok {
			return nil, fmt.Errorf("config keys %s and %s both map to %s", other, s.key, s.env)
		}
		byEnv[s.env] = s.key
	}
	return out, nil
}

func collect(t reflect.Type, prefix string, index []int, out *[]setting) error {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, inline, skip := yamlName(f)
		if skip {
			continue
		}
		key := prefix + name
		idx := append(append([]int(nil), index...), i)
		if inline {
			key = strings.TrimSuffix(prefix, ".")
		}
		if f.Type.Kind() == reflect.Struct {
			p := key + "."
			if key == "" {
				p = ""
			}
			if err := collect(f.Type, p, idx, out); err != nil {
				return err
			}
			continue
		}
		if !envSettable(f.Type) {
			return fmt.Errorf("config key %s: type %v cannot be set from the environment", key, f.Type)
		}
		*out = append(*out, setting{
			key:    key,
			env:    envName(key),
			index:  idx,
			typ:    f.Type,
			secret: f.Tag.Get("secret") == "true",
		})
	}
	return nil
}

// yamlName follows yaml.v3: the tag's name, else the lower-cased field name.
func yamlName(f reflect.StructField) (name string, inline, skip bool) {
	tag := f.Tag.Get("yaml")
	if tag == "-" {
		return "", false, true
	}
	name, opts, _ := strings.Cut(tag, ",")
	for _, o := range strings.Split(opts, ",") {
		if o == "inline" {
			inline = true
		}
	}
	if name == "" {
		name = strings.ToLower(f.Name)
	}
	return name, inline, false
}

// envName is the variable for a YAML key path: "HOURGLASS_" + the path,
// upper-cased, with "_" for ".".
func envName(key string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func envSettable(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	case reflect.Slice:
		return t.Elem().Kind() == reflect.String
	}
	return false
}
