// Command bhash is the walb-tools compatible tool of the same name: it
// prints the hash of a file or block device, whole or per chunk. See
// internal/cli for its options, or run it with -h.
package main

import "github.com/walb-go/walb/internal/cli"

func main() { cli.Main(cli.BHash) }
