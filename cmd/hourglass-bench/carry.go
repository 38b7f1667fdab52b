package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// A run of some figures only (--figures) keeps the other figures' sections
// of the BENCHMARKS.md already in the output directory: their text, their
// summary row and their command lines, marked as carried over. So
// `--figures 6` refreshes figure 6 and leaves figures 1 to 5 as the last
// run that made them wrote them.

// oldReport is what a run keeps of the report it replaces.
type oldReport struct {
	run     string // its "This run:" line, or what it carried from
	carried bool   // it carried figures over itself
	machine string // its machine section
	// carriedMachine is where the figures it carried itself ran.
	carriedMachine string
	sections       map[int]string // figure → its section, without the "## " title line
	titles         map[int]string
	summary        map[int]string // figure → its summary cell
	commands       map[int]string // figure → its command-line items, verbatim
}

// carriedFrom and carriedMachine introduce, in a report, where the
// carried figures come from.
const (
	carriedFrom    = "carried over unchanged from the report of "
	carriedMachine = "The carried figures ran on: "
)

var (
	figureTitle = regexp.MustCompile(`^## ([0-9]+)\. (.*)$`)
	summaryRow  = regexp.MustCompile(`^([0-9]+)\. `)
)

// readOldReport parses the report at path; nil when there is none, or it
// was a smoke run and this one is not.
func readOldReport(path string, smoke bool) *oldReport {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	text := string(data)
	if !smoke && strings.Contains(text, "> **Smoke run**") {
		return nil
	}
	r := &oldReport{sections: map[int]string{}, titles: map[int]string{}, summary: map[int]string{}, commands: map[int]string{}}
	lines := strings.SplitAfter(text, "\n")
	current, inCommands, inMachine, cmdFigure := 0, false, false, 0
	for _, l := range lines {
		trimmed := strings.TrimRight(l, "\n")
		if strings.HasPrefix(trimmed, "This run: ") && !r.carried {
			r.run = strings.TrimSuffix(strings.TrimPrefix(trimmed, "This run: "), ".")
		}
		if i := strings.Index(trimmed, carriedFrom); i >= 0 {
			// It carried figures itself: keep where they came from.
			r.run, r.carried = strings.TrimSuffix(trimmed[i+len(carriedFrom):], "."), true
			continue
		}
		if strings.HasPrefix(trimmed, "## ") {
			current, inCommands, inMachine = 0, trimmed == "## Command lines", trimmed == "## Machine"
			if m := figureTitle.FindStringSubmatch(trimmed); m != nil {
				current, _ = strconv.Atoi(m[1])
				r.titles[current] = m[1] + ". " + m[2]
			}
			continue
		}
		if current != 0 {
			r.sections[current] += l
			continue
		}
		if inMachine {
			if rest, ok := strings.CutPrefix(trimmed, "- "+carriedMachine); ok {
				r.carriedMachine = rest
			} else if strings.HasPrefix(trimmed, "- ") {
				r.machine += l
			}
			continue
		}
		if inCommands {
			if strings.HasPrefix(trimmed, "- figure ") {
				n, _ := strconv.Atoi(strings.TrimPrefix(strings.SplitN(trimmed, ",", 2)[0], "- figure "))
				cmdFigure = n
			} else if !strings.HasPrefix(l, " ") && trimmed != "" {
				cmdFigure = 0
			}
			if cmdFigure != 0 {
				r.commands[cmdFigure] += l
			}
			continue
		}
		// A summary row: "| <n>. <title> | <result> |".
		if strings.HasPrefix(trimmed, "| ") {
			cells := strings.SplitN(strings.TrimSuffix(strings.TrimPrefix(trimmed, "| "), " |"), " | ", 2)
			if m := summaryRow.FindStringSubmatch(cells[0]); m != nil && len(cells) == 2 {
				n, _ := strconv.Atoi(m[1])
				r.summary[n] = cells[1]
			}
		}
	}
	for n, c := range r.commands {
		// As writeReport writes them: a YAML block ends with a blank line.
		c = strings.TrimRight(c, "\n") + "\n"
		if strings.HasSuffix(c, "```\n") {
			c += "\n"
		}
		r.commands[n] = c
	}
	for n, body := range r.sections {
		r.sections[n] = strings.TrimRight(strings.TrimLeft(body, "\n"), "\n") + "\n"
	}
	return r
}

// carried returns the sections of the old report for the figures this run
// did not run, as sections to write, and their command-line items.
func (h *harness) carried() (secs []*section, old *oldReport) {
	old = readOldReport(filepath.Join(h.outDir, "BENCHMARKS.md"), h.opts.smoke)
	if old == nil {
		return nil, nil
	}
	for n := 1; n <= 6; n++ {
		if slices.Contains(h.opts.figures, n) || old.titles[n] == "" {
			continue
		}
		secs = append(secs, &section{figure: n, title: old.titles[n], body: old.sections[n], summary: old.summary[n], carried: true})
	}
	return secs, old
}

// machineLine is the old report's machine, on one line.
func (r *oldReport) machineLine() string {
	if r.carriedMachine != "" {
		return r.carriedMachine
	}
	var parts []string
	for _, l := range strings.Split(strings.TrimSpace(r.machine), "\n") {
		l = strings.TrimPrefix(strings.TrimSpace(l), "- ")
		if l != "" && !strings.HasPrefix(l, "Client, servers") {
			parts = append(parts, strings.TrimSuffix(l, "."))
		}
	}
	return strings.Join(parts, "; ")
}
