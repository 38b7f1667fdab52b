package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Environment overrides.
//
// Every YAML key has a variable: "HOURGLASS_" + the key path, upper-cased,
// with "_" for ".". So workers.count is HOURGLASS_WORKERS_COUNT,
// auth.tokens_file is HOURGLASS_AUTH_TOKENS_FILE and
// admission.seconds_per_megapixel_step is
// HOURGLASS_ADMISSION_SECONDS_PER_MEGAPIXEL_STEP. Values are read by the
// key's type:
//
//	string           as is; set but empty means empty (metrics.listen "" is off)
//	integer          decimal: "4"
//	float            a finite decimal number: "0.05"
//	bool             strconv.ParseBool: true, false, 1, 0, t, f
//	duration         time.ParseDuration: "30s", "1m30s", "250ms"
//	list of strings  comma-separated, no quoting or trimming:
//	                 HOURGLASS_WORKERS_COMMAND=python3,-m,worker; empty is the
//	                 empty list. An argument that holds a comma needs the file.
//
// Any other HOURGLASS_* variable is an error, so a misspelt one can never be
// silently ignored, unless notSettings names it.

const envPrefix = "HOURGLASS_"

// notSettings are the HOURGLASS_* variables that other parts of hourglass
// use and that are not config keys, so hourglassd must let them pass. A
// variable added elsewhere in hourglass that hourglassd may see in its own
// environment belongs here, or hourglassd will refuse to start.
var notSettings = map[string]string{
	"HOURGLASS_WORKER_SOCKET": "set by the executor for each worker: the socket it serves on",
	"HOURGLASS_DEMO_ADDR":     "read by scripts/demo.sh, which starts hourglassd",
	"HOURGLASS_DEMO_OUT":      "read by scripts/demo.sh, which starts hourglassd",
}

// applyEnv sets dst's fields (dst points to a struct) from the HOURGLASS_*
// entries of environ, later entries winning. It returns which variable set
// each key, and every bad entry at once, each naming its variable.
func applyEnv(dst any, environ []string) (setBy map[string]string, err error) {
	root := reflect.ValueOf(dst).Elem()
	settings, err := settingsOf(root.Type())
	if err != nil {
		return nil, err
	}
	byEnv := make(map[string]setting, len(settings))
	for _, s := range settings {
		byEnv[s.env] = s
	}
	setBy = make(map[string]string)
	var errs []error
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) {
			continue
		}
		if _, ok := notSettings[name]; ok {
			continue
		}
		s, ok := byEnv[name]
		if !ok {
			errs = append(errs, unknownEnv(name, settings))
			continue
		}
		if err := setFromString(root.FieldByIndex(s.index), value); err != nil {
			shown := strconv.Quote(value)
			if s.secret {
				shown = "the value"
			}
			errs = append(errs, fmt.Errorf("environment %s (%s): %s %v", name, s.key, shown, err))
			continue
		}
		setBy[s.key] = name
	}
	return setBy, errors.Join(errs...)
}

func unknownEnv(name string, settings []setting) error {
	best, bestDist := "", math.MaxInt
	for _, s := range settings {
		if d := editDistance(name, s.env); d < bestDist {
			best, bestDist = s.env, d
		}
	}
	if bestDist <= 3 {
		return fmt.Errorf("environment %s: not a config key; did you mean %s?", name, best)
	}
	return fmt.Errorf("environment %s: not a config key (variables are %s + the YAML key path, upper-case, \"_\" for \".\", e.g. %s)",
		name, envPrefix, envName("workers.count"))
}

// setFromString parses s by v's type; its error completes the sentence
// "VALUE ...".
func setFromString(v reflect.Value, s string) error {
	if v.Type() == durationType {
		d, err := time.ParseDuration(s)
		if err != nil {
			return errors.New("is not a duration like 30s, 1m30s or 250ms")
		}
		v.SetInt(int64(d))
		return nil
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return errors.New("is not true or false")
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(s, 10, v.Type().Bits())
		if err != nil {
			return numError(err, "a whole number")
		}
		v.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(s, 10, v.Type().Bits())
		if err != nil {
			return numError(err, "a whole number >= 0")
		}
		v.SetUint(n)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, v.Type().Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return errors.New("is not a finite number")
		}
		v.SetFloat(f)
	case reflect.Slice: // of strings: settingsOf admits no other
		if s == "" {
			v.SetZero()
			return nil
		}
		parts := strings.Split(s, ",")
		list := reflect.MakeSlice(v.Type(), len(parts), len(parts))
		for i, p := range parts {
			list.Index(i).SetString(p)
		}
		v.Set(list)
	default:
		return fmt.Errorf("cannot be read into a %v", v.Type())
	}
	return nil
}

func numError(err error, want string) error {
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("is out of range")
	}
	return errors.New("is not " + want)
}

// editDistance is the Levenshtein distance, for "did you mean".
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
