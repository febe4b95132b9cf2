// Command wdevc controls WalB devices with walb-tools' command names:
// userspace devices of a walb-dev daemon, or devices of the WalB kernel
// driver. See package devhost and internal/cli, or run wdevc help.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.Wdevc) }
