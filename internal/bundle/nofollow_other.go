//go:build !unix

package bundle

// oNoFollow is 0 where the flag does not exist; os.Root still keeps every
// path inside the destination there.
const oNoFollow = 0
