// Command wlog-to-wdiff is the walb-tools compatible tool of the same name; see
// internal/cli for its options, or run it with -h.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.WlogToWdiff) }
