// Command balancer runs libp2p-balancer: the load balancer daemon (serve),
// a sidecar that puts TCP services behind it (backend), an nc-like tool to
// try a route (dial), a peer ID printer (id) and the whole scenario in one
// process (demo). Run `balancer help` for the list, and `balancer COMMAND
// --help` for each command's flags.
//
// This package only parses flags; the work is done by packages daemon,
// sidecar, dial, demo and keyfile.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
)

// command is one subcommand.
type command struct {
	name    string
	args    string // what follows the flags in the usage line
	summary string
	about   string // paragraphs shown by --help before the flags
	// flags declares the command's flags on fs and returns the function
	// that runs it with the remaining arguments; it returns the exit code.
	flags func(fs *flag.FlagSet) func(args []string) int
}

var commands = []*command{serveCmd, backendCmd, dialCmd, idCmd, statusCmd, demoCmd}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 {
			if c := find(rest[0]); c != nil {
				return c.run([]string{"--help"})
			}
		}
		usage(os.Stdout)
		return 0
	}
	c := find(name)
	if c == nil {
		fmt.Fprintf(os.Stderr, "balancer: unknown command %q (see balancer help)\n", name)
		return 2
	}
	return c.run(rest)
}

func find(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: balancer COMMAND [flags]\n\n")
	fmt.Fprintf(w, "libp2p-balancer shares one libp2p peer ID between backends, routing streams by protocol ID.\n\nCommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun 'balancer COMMAND --help' for a command's flags. Start with 'balancer demo'.\n")
}

// run parses the command's flags and runs it. --help prints the usage to
// standard output and exits 0; a flag error is one line on standard error
// and exit code 2.
func (c *command) run(args []string) int {
	fs := flag.NewFlagSet("balancer "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runFn := c.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.help(os.Stdout, fs)
			return 0
		}
		fmt.Fprintf(os.Stderr, "balancer %s: %v (see balancer %s --help)\n", c.name, err, c.name)
		return 2
	}
	return runFn(fs.Args())
}

func (c *command) help(w io.Writer, fs *flag.FlagSet) {
	line := "balancer " + c.name + " [flags]"
	if c.args != "" {
		line += " " + c.args
	}
	fmt.Fprintf(w, "Usage: %s\n\n%s\n\nFlags:\n", line, strings.TrimSpace(c.about))
	fs.VisitAll(func(f *flag.Flag) {
		kind, text := flag.UnquoteUsage(f)
		if kind != "" {
			kind = " " + strings.ToUpper(kind)
		}
		if isBool(f) {
			kind = ""
		}
		fmt.Fprintf(w, "  --%s%s\n", f.Name, kind)
		for _, l := range strings.Split(text, "\n") {
			fmt.Fprintf(w, "        %s\n", l)
		}
		if def := f.DefValue; def != "" && def != "0" && def != "0s" && def != "false" {
			fmt.Fprintf(w, "        (default %s)\n", def)
		}
	})
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// fail prints err as the command's one error line and returns exit code 1.
func fail(cmd string, err error) int {
	// Multi-line errors (go-libp2p lists every failed dial on its own
	// line) are folded: the error is one line.
	msg := strings.Join(strings.Fields(err.Error()), " ")
	fmt.Fprintf(os.Stderr, "balancer %s: %s\n", cmd, msg)
	return 1
}

// listFlag is a repeatable flag bound to a list. Its first use on the
// command line replaces the list, defaults included.
type listFlag struct {
	dst   *[]string
	given []string
}

func newList(dst *[]string) *listFlag { return &listFlag{dst: dst} }

func (l *listFlag) String() string {
	if l == nil || l.dst == nil {
		return ""
	}
	return strings.Join(*l.dst, " ")
}

func (l *listFlag) Set(s string) error {
	if l.given == nil {
		*l.dst = nil
	}
	l.given = append(l.given, s)
	*l.dst = append(*l.dst, s)
	return nil
}

// values returns the values given on the command line, in order.
func (l *listFlag) values() []string { return l.given }

// newLogger logs text to standard error at level.
func newLogger(level string) (*slog.Logger, error) {
	return logging.New("text", level, os.Stderr)
}
