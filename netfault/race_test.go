//go:build race

package netfault_test

const raceEnabled = true
