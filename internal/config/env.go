package config

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// envMap indexes an os.Environ-style list. The first occurrence of a name
// wins, as with os.Getenv; entries without '=' are ignored, and empty values
// count as unset (so that FOO=${FOO} in a compose file does not set FOO).
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if _, seen := m[k]; seen {
			continue
		}
		m[k] = v
	}
	for k, v := range m {
		if v == "" {
			delete(m, k)
		}
	}
	return m
}

// The specification's pattern names. A phase prefix is upper case letters,
// digits and '_' (EXTRACTION_, KG_INGEST_) and maps to the lower-case phase
// name. Names starting with RETRYD_ are never phase settings: they are
// retryd's own, and RETRYD_MAX_RETRIES is more likely a mistake for
// MAX_RETRIES than a phase called "retryd".
var (
	delayVar           = regexp.MustCompile(`^RETRY_DELAY_([0-9]+)$`)
	phaseMaxRetriesVar = regexp.MustCompile(`^([A-Z][A-Z0-9_]*)_MAX_RETRIES$`)
	phaseDelayVar      = regexp.MustCompile(`^([A-Z][A-Z0-9_]*)_RETRY_DELAY_([0-9]+)$`)
)

// misnamed are variables that look like settings but are not, with what was
// probably meant: silently ignoring them would leave the default in force.
var misnamed = map[string]string{
	"RETRYD_MAX_RETRIES":  "MAX_RETRIES",
	"RETRYD_JITTER":       "RETRY_JITTER",
	"RETRYD_RETRY_JITTER": "RETRY_JITTER",
	"RETRYD_RETRY_DELAYS": "RETRY_DELAY_1, RETRY_DELAY_2, ...",
	"RETRY_DELAYS":        "RETRY_DELAY_1, RETRY_DELAY_2, ...",
}

// parseEnv turns the environment into assignments, in table order, with
// each phase's settings in phase-name order.
func parseEnv(env map[string]string) ([]assignment, error) {
	names := slices.Sorted(maps.Keys(env))
	for _, name := range names {
		if meant, ok := misnamed[name]; ok {
			return nil, fmt.Errorf("%s is not a retryd setting: did you mean %s? (see retryd --help)", name, meant)
		}
		if strings.HasPrefix(name, "RETRYD_RETRY_DELAY_") {
			return nil, fmt.Errorf("%s is not a retryd setting: did you mean %s? (see retryd --help)", name, strings.TrimPrefix(name, "RETRYD_"))
		}
	}

	// Collect the numbered and per-phase variables.
	delays := map[int]string{}                 // N → variable name
	phaseDelays := map[string]map[int]string{} // phase → N → variable name
	phaseMaxRetries := map[string]string{}     // phase → variable name
	for _, name := range names {
		if m := delayVar.FindStringSubmatch(name); m != nil {
			n, err := delayNumber(name, m[1])
			if err != nil {
				return nil, err
			}
			delays[n] = name
			continue
		}
		if strings.HasPrefix(name, "RETRYD_") {
			continue
		}
		if m := phaseDelayVar.FindStringSubmatch(name); m != nil {
			n, err := delayNumber(name, m[2])
			if err != nil {
				return nil, err
			}
			phase := strings.ToLower(m[1])
			if phaseDelays[phase] == nil {
				phaseDelays[phase] = map[int]string{}
			}
			phaseDelays[phase][n] = name
			continue
		}
		if m := phaseMaxRetriesVar.FindStringSubmatch(name); m != nil {
			phaseMaxRetries[strings.ToLower(m[1])] = name
		}
	}

	var out []assignment
	for i := range settings {
		s := &settings[i]
		switch s.flag {
		case "retry-delays":
			if len(delays) > 0 {
				a, err := numberedList(s, "", delays, env)
				if err != nil {
					return nil, err
				}
				out = append(out, a)
			}
		case "phase-retry-delays":
			for _, phase := range slices.Sorted(maps.Keys(phaseDelays)) {
				a, err := numberedList(s, phase, phaseDelays[phase], env)
				if err != nil {
					return nil, err
				}
				out = append(out, a)
			}
		case "phase-max-retries":
			for _, phase := range slices.Sorted(maps.Keys(phaseMaxRetries)) {
				name := phaseMaxRetries[phase]
				out = append(out, assignment{s: s, phase: phase, vals: []string{env[name]}, src: name})
			}
		default:
			v, ok := env[s.env]
			if !ok {
				continue
			}
			a := assignment{s: s, vals: []string{v}, src: s.env}
			if s.kind == list {
				a.vals = splitList(v)
			}
			out = append(out, a)
		}
	}
	return out, nil
}

// delayNumber reads the N of RETRY_DELAY_N: 1, 2, … without leading zeros.
func delayNumber(name, digits string) (int, error) {
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || digits[0] == '0' {
		return 0, fmt.Errorf("%s: the delay number must be 1, 2, 3, ... (no 0, no leading zeros)", name)
	}
	return n, nil
}

// numberedList turns RETRY_DELAY_1..N (or a phase's) into one list
// assignment, insisting on numbers contiguous from 1: a gap would silently
// shorten the schedule.
func numberedList(s *setting, phase string, byNumber map[int]string, env map[string]string) (assignment, error) {
	nums := slices.Sorted(maps.Keys(byNumber))
	a := assignment{s: s, phase: phase, src: byNumber[nums[0]]}
	for i, n := range nums {
		if n != i+1 {
			missing := strings.TrimSuffix(byNumber[n], strconv.Itoa(n)) + strconv.Itoa(i+1)
			return assignment{}, fmt.Errorf("%s is set but %s is not: number the delays from 1 without gaps", byNumber[n], missing)
		}
		a.vals = append(a.vals, env[byNumber[n]])
		a.itemSrc = append(a.itemSrc, byNumber[n])
	}
	return a, nil
}
