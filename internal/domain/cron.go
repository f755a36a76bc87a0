package domain

import "time"

// Cron is a schedule of background runs of one entrypoint of an agent:
// each tick of Schedule (a cron expression, read in Timezone) creates
// one run, until EndAt.
type Cron struct {
	ID, AgentID, Tenant string
	Schedule, Timezone  string // "*/5 * * * *"; an IANA zone like "Europe/Paris"
	EntrypointTag       string
	InputArgs           []byte // JSON list
	InputKwargs         []byte // JSON object
	Webhook             string // each run's webhook ("" if none)
	EndAt               time.Time
	Paused              bool
	// NextAt is the next tick to fire (zero: none left, it has ended).
	NextAt    time.Time
	LastRunID string // the last run it created ("" if none)
	CreatedAt time.Time
}
