// Package checksum implements the WalB checksum, the 32-bit additive checksum
// that protects every WalB on-disk structure: super sectors, logpack headers,
// log IO data, wlog file headers and every part of a wdiff file.
//
// # Algorithm
//
// The input is read as little-endian 32-bit words, which are added to a salt
// modulo 2^32. A trailing group of 1–3 bytes is zero-padded to a word (the
// kernel never produces one; walb-tools does for compressed wdiff payloads).
// The result is the two's-complement negation of the sum:
//
//	sum := salt
//	for each word w: sum += w
//	result := -sum
//
// Because the result is the negated sum, a structure that stores its own
// checksum (computed while the field was zero) sums to zero with the same
// salt; that is how every reader validates one (see [Valid]).
//
// Incremental use: [Add] folds more bytes into a running sum and [Finish]
// negates it. Split input only on 4-byte boundaries, as the reference does.
package checksum
