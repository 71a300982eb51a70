//go:build race

package reliability

// raceEnabled: the race detector slows everything several times over,
// so the load tests send less (still above the rates they promise) and
// the heavy ones do fewer rounds.
const raceEnabled = true
