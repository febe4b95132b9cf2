// Command walb-dev is the userspace WalB device daemon: it serves the
// devices registered in its base directory over NBD and answers wdevc on a
// control socket. See package devhost, or run it with -h.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.WalbDev) }
