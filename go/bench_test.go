package vmta

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSubmit measures vmta_engine_submit through cgo with durability "none", against the
// accepting smtp-sink: one message, one recipient per call. Sub-benchmarks by submitting goroutines.
// Run: go test -run '^$' -bench Submit -benchtime 20000x
func BenchmarkSubmit(b *testing.B) {
	for _, threads := range []int{1, 4} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			e, err := New(Options{TOML: config(b, "")})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			go func() {
				for range e.Events() {
				}
			}()
			msg := Message{Sender: "bench@vmta.test", Recipients: []string{"bench@ok.ffi.test"}, Body: body("bench", "bench@ok.ffi.test"), Bulk: true}
			var next int64
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for t := 0; t < threads; t++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for atomic.AddInt64(&next, 1) <= int64(b.N) {
						if _, err := e.Submit(msg); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "calls/s")
		})
	}
}
