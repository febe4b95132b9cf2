// Command walbc sends one command to a walb storage, proxy or archive
// server, with walb-tools' command names; see package controller and
// internal/cli, or run walbc help.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.Walbc) }
