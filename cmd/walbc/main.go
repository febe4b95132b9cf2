// Command walbc sends one command to a walb storage, proxy or archive
// server, with walb-tools' command names, or, given a backup group's
// servers (-storage, -proxy, -archive NAME=HOST:PORT,...), runs an
// operation of the controller on them (replicate-once, synchronize,
// hash-backup...) under walb-tools' Python method names; see package
// controller and internal/cli, or run walbc help.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.Walbc) }
