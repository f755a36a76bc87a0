package microvm

func rdtsc() uint64

const haveRDTSC = true
