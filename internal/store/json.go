package store

import "strconv"

// round2 is Python's round(x, 2): the decimal nearest to x's exact binary
// value, ties to even.
func round2(x float64) float64 {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(x, 'f', 2, 64), 64)
	return r
}
