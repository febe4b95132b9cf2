//go:build race

package meta

// raceEnabled lets the heaviest exhaustive tests sample less under -race,
// where every memory access is instrumented.
const raceEnabled = true
