// Package cli holds the command-line front ends of the walb tools in cmd/.
// Each tool is a function taking its arguments and output streams, so the
// binaries in cmd/ stay one line long and tests run the very same code with
// the same arguments an operator would type.
//
// Options follow walb-tools' conventions (cybozu::Option): a single dash and
// a name (-i, -o, -cmpr), boolean options take no value, list options (-i of
// the merge tool) take every following argument up to the next option, and
// sizes accept K, M, G suffixes (powers of 1024). Options and positional
// arguments may be mixed. -h prints usage.
package cli
