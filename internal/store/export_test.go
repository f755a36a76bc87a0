package store

// PauseWriter holds the writer until resume is called, so that a benchmark
// can time the enqueue path alone.
func PauseWriter(db *DB) (resume func()) {
	return db.hist.Pause()
}

// NewRegistryRecorderEvery is NewRegistryRecorder with another interval.
var NewRegistryRecorderEvery = newRegistryRecorder
