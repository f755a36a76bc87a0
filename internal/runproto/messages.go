package runproto

// Init is the body of the INIT frame.
type Init struct {
	AgentDir    string            `json:"agent_dir"`
	Entrypoints []InitEntrypoint  `json:"entrypoints"`
	Env         map[string]string `json:"env"`
	Threads     int               `json:"threads"`
	Limits      *InitLimits       `json:"limits,omitempty"`
	// Flow bounds results, chunks and streams in flight (see Flow).
	Flow *Flow `json:"flow,omitempty"`
}

// InitLimits are per-process limits the runner sets on itself (setrlimit)
// before it imports the agent, so that the kernel enforces them.
type InitLimits struct {
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	OpenFiles  int     `json:"open_files,omitempty"`
}

// InitEntrypoint is one entrypoint the runner imports.
type InitEntrypoint struct {
	Tag    string `json:"tag"`
	File   string `json:"file"`
	Module string `json:"module"`
	// Extractor is [key, JSONPath] pairs in the config's order: the
	// extracted result's keys come out in this order, as in the original.
	Extractor [][2]string `json:"extractor,omitempty"`
	// A webhook entrypoint (framework n8n) has these instead of File/Module.
	WebhookURL string `json:"webhook_url,omitempty"`
	Method     string `json:"method,omitempty"`
	Timeout    int    `json:"timeout,omitempty"`
}

// CallError is a call that the runner answered with an ERROR frame: the agent
// function raised (code INTERNAL_ERROR) or the call itself was malformed.
type CallError struct {
	Code      string `json:"code"`
	Type      string `json:"type"`
	Message   string `json:"message"`
	Traceback string `json:"traceback"`
}

func (e *CallError) Error() string {
	if e.Type == "" {
		return e.Message
	}
	return e.Type + ": " + e.Message
}

// Ready is the runner's answer to INIT.
type Ready struct {
	Protocol    int               `json:"protocol"`
	Python      string            `json:"python"`
	PID         int               `json:"pid"`
	Entrypoints map[string]string `json:"entrypoints"`
	// Errors maps the tag of every entrypoint that failed to load to why.
	Errors map[string]string `json:"errors"`
}
