package store

// PauseWriter holds the writer until resume is called, so that a benchmark
// can time the enqueue path alone.
func PauseWriter(db *DB) (resume func()) {
	ack := make(chan struct{})
	db.queue <- op{kind: opPause, ack: ack}
	return func() { close(ack) }
}

// NewRegistryRecorderEvery is NewRegistryRecorder with another interval.
var NewRegistryRecorderEvery = newRegistryRecorder
