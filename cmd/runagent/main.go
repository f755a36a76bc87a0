// Command runagent serves Python agents over the RunAgent wire protocol.
package main

import (
	"os"

	"github.com/runagent-go/runagent/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	os.Exit(cli.Main(version, os.Args[1:]))
}
