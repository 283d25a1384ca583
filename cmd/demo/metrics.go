package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	tokenrefreshotel "github.com/tokenrefresh/grpc-tokenrefresh/otel"
)

// phaseKey is the attribute that tells the phases' instruments apart.
const phaseKey = attribute.Key("demo.phase")

// metrics serves the in-process Sources' OpenTelemetry metrics as
// Prometheus text: the OpenTelemetry SDK with the Prometheus exporter as its
// reader, on a registry of its own, behind promhttp.
type metrics struct {
	mp  *sdkmetric.MeterProvider
	srv *http.Server
	url string
}

func startMetrics(addr string) (*metrics, error) {
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry))
	if err != nil {
		return nil, fmt.Errorf("the Prometheus exporter: %w", err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
	m := &metrics{
		mp:  sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		url: "http://" + lis.Addr().String() + "/metrics",
	}
	go func() {
		if err := m.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "demo: metrics endpoint:", err)
		}
	}()
	return m, nil
}

// observer returns an Observer whose instruments carry demo.phase=phase.
func (m *metrics) observer(phase string) (*tokenrefreshotel.Observer, error) {
	return tokenrefreshotel.NewObserver(tokenrefreshotel.WithMeterProvider(m.mp),
		tokenrefreshotel.WithAttributes(phaseKey.String(phase)))
}

// metricsURL is the endpoint's URL; empty without -metrics-addr.
func (m *metrics) metricsURL() string {
	if m == nil {
		return ""
	}
	return m.url
}

func (m *metrics) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	_ = m.mp.Shutdown(ctx)
}
