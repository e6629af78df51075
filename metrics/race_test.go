//go:build race

package metrics_test

// raceEnabled: the race detector makes sync.Pool drop a share of what is put
// back, so code that borrows label slices from a pool allocates now and then.
const raceEnabled = true
