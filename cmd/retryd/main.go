// Command retryd serves the retry scheduler over gRPC: workers report
// attempts and receive due retries; operators inspect and re-drive jobs.
// Run `retryd --help` for every flag and its environment twin.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/retryd/retryd/internal/app"
	"github.com/retryd/retryd/internal/config"
)

func main() {
	cfg, err := config.Load(os.Args[1:], os.Environ())
	if errors.Is(err, flag.ErrHelp) || errors.Is(err, config.ErrVersion) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "retryd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, cfg, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "retryd:", err)
		os.Exit(1)
	}
}
