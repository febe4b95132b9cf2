package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/pkg/errors"
)

// ErrUsage marks a command-line error; the tool prints its usage.
var ErrUsage = errors.New("usage error")

// ErrHelp is returned by Parse when -h was given.
var ErrHelp = errors.New("help requested")

type optKind int

const (
	kindBool optKind = iota
	kindString
	kindStrings
	kindSize
)

type option struct {
	name, arg, help string
	kind            optKind
	set             func(string) error
	def             string
}

type param struct {
	name, help string
	optional   bool
	p          *string
}

// Options describes and parses one tool's command line.
type Options struct {
	Name   string
	Desc   string
	opts   []*option
	params []*param
}

// NewOptions starts the option set of the tool name.
func NewOptions(name, desc string) *Options { return &Options{Name: name, Desc: desc} }

// Bool adds a flag that takes no value.
func (o *Options) Bool(p *bool, name, help string) {
	o.opts = append(o.opts, &option{name: name, help: help, kind: kindBool,
		set: func(string) error { *p = true; return nil }})
}

// String adds an option with one value.
func (o *Options) String(p *string, name, arg, def, help string) {
	*p = def
	o.opts = append(o.opts, &option{name: name, arg: arg, help: help, kind: kindString, def: def,
		set: func(v string) error { *p = v; return nil }})
}

// Strings adds an option taking every following argument up to the next
// option (walb-tools' vector options, e.g. "-i a.wdiff b.wdiff").
func (o *Options) Strings(p *[]string, name, arg, help string) {
	o.opts = append(o.opts, &option{name: name, arg: arg, help: help, kind: kindStrings,
		set: func(v string) error { *p = append(*p, v); return nil }})
}

// Size adds an option taking a byte count with an optional K, M or G suffix.
func (o *Options) Size(p *uint64, name, arg string, def uint64, help string) {
	*p = def
	o.opts = append(o.opts, &option{name: name, arg: arg, help: help, kind: kindSize, def: strconv.FormatUint(def, 10),
		set: func(v string) error {
			n, err := ParseSize(v)
			if err != nil {
				return err
			}
			*p = n
			return nil
		}})
}

// Param adds a positional parameter.
func (o *Options) Param(p *string, name, help string, optional bool) {
	o.params = append(o.params, &param{name: name, help: help, optional: optional, p: p})
}

// ParseSize parses "4096", "16K", "1M", "2G" (binary units).
func ParseSize(s string) (uint64, error) {
	mult := uint64(1)
	t := strings.TrimSpace(s)
	if t != "" {
		switch t[len(t)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n > (^uint64(0))/mult {
		return 0, errors.Wrapf(ErrUsage, "bad size %q", s)
	}
	return n * mult, nil
}

func (o *Options) lookup(name string) *option {
	for _, op := range o.opts {
		if op.name == name {
			return op
		}
	}
	return nil
}

func isOption(a string) bool { return len(a) > 1 && a[0] == '-' && (a[1] < '0' || a[1] > '9') }

// Parse reads args (without the program name).
func (o *Options) Parse(args []string) error {
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !isOption(a) {
			pos = append(pos, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		if name == "h" || name == "help" {
			return ErrHelp
		}
		op := o.lookup(name)
		if op == nil {
			return errors.Wrapf(ErrUsage, "unknown option %s", a)
		}
		switch op.kind {
		case kindBool:
			_ = op.set("")
		case kindStrings:
			n := 0
			for i+1 < len(args) && !isOption(args[i+1]) {
				i++
				if err := op.set(args[i]); err != nil {
					return err
				}
				n++
			}
			if n == 0 {
				return errors.Wrapf(ErrUsage, "option %s needs a value", a)
			}
		default:
			if i+1 >= len(args) {
				return errors.Wrapf(ErrUsage, "option %s needs a value", a)
			}
			i++
			if err := op.set(args[i]); err != nil {
				return errors.Wrapf(ErrUsage, "option %s: %v", a, err)
			}
		}
	}
	for i, p := range o.params {
		if i < len(pos) {
			*p.p = pos[i]
		} else if !p.optional {
			return errors.Wrapf(ErrUsage, "missing %s", p.name)
		}
	}
	if len(pos) > len(o.params) {
		return errors.Wrapf(ErrUsage, "unexpected argument %q", pos[len(o.params)])
	}
	return nil
}

// Usage writes the help text.
func (o *Options) Usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s [options]", o.Name)
	for _, p := range o.params {
		if p.optional {
			fmt.Fprintf(w, " [%s]", p.name)
		} else {
			fmt.Fprintf(w, " %s", p.name)
		}
	}
	fmt.Fprintf(w, "\n%s\n", o.Desc)
	for _, p := range o.params {
		fmt.Fprintf(w, "  %-22s %s\n", p.name, p.help)
	}
	for _, op := range o.opts {
		left := "-" + op.name
		switch op.kind {
		case kindStrings:
			left += " " + op.arg + "..."
		case kindString, kindSize:
			left += " " + op.arg
		}
		help := op.help
		if op.def != "" && op.def != "0" {
			help += " (default: " + op.def + ")"
		}
		fmt.Fprintf(w, "  %-22s %s\n", left, help)
	}
	fmt.Fprintf(w, "  %-22s %s\n", "-h", "show this help")
}

// Tool is a command-line tool: it parses args and runs.
type Tool func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Run executes a tool and maps its result to an exit code: 0 success, 1 error,
// 2 usage error.
func Run(ctx context.Context, name string, tool Tool, args []string, stdout, stderr io.Writer) int {
	err := tool(ctx, args, stdout, stderr)
	switch {
	case err == nil || errors.Is(err, ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		fmt.Fprintf(stderr, "%s: %v (see -h)\n", name, err)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	return 1
}

// Main runs tool as the program's main function and exits.
func Main(tool Tool) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Run(ctx, progName(), tool, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func progName() string {
	n := os.Args[0]
	if i := strings.LastIndexByte(n, '/'); i >= 0 {
		n = n[i+1:]
	}
	return n
}

// parse handles -h and usage errors uniformly for every tool.
func parse(o *Options, args []string, stdout io.Writer) error {
	err := o.Parse(args)
	if errors.Is(err, ErrHelp) {
		o.Usage(stdout)
	}
	return err
}
