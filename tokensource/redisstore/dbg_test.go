package redisstore
import ("context";"testing";"time";"github.com/tokenrefresh/grpc-tokenrefresh/internal/redistest")
func TestDbgCut(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "yes")
	ctx := testContext(t)
	s := member(t, srv, "token", WithLeaseTTL(time.Minute))
	s.Save(ctx, secretToken())
	admin := srv.Client()
	sleeping := make(chan error, 1)
	go func() { sleeping <- admin.Do(ctx, "DEBUG", "SLEEP", "2").Err() }()
	probe := srv.Client()
	for { pctx, c := context.WithTimeout(ctx, 50*time.Millisecond); err := probe.Ping(pctx).Err(); c(); if err != nil { break } }
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	_, err := s.TryLease(short)
	cancel()
	t.Logf("err=%v", err)
	<-sleeping
	time.Sleep(200*time.Millisecond)
	t.Logf("exists=%v holder=%v", admin.Exists(ctx, s.leaseKey).Val(), admin.HGet(ctx, s.recordKey, "holder").Val())
}
