package tokenrefreshotel

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Option configures an Observer created by NewObserver.
type Option func(*options)

type options struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	attrs          []attribute.KeyValue
}

// WithMeterProvider makes the Observer create its instruments with mp. The
// default is the global MeterProvider (otel.GetMeterProvider) at the time
// NewObserver runs; nil selects the default.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.meterProvider = mp }
}

// WithTracerProvider makes the Observer create its spans with tp. The
// default is the global TracerProvider (otel.GetTracerProvider) at the time
// NewObserver runs; nil selects the default. A noop TracerProvider turns the
// spans off and keeps the metrics.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracerProvider = tp }
}

// WithAttributes adds attrs to every measurement and every refresh span of
// the Observer, to tell the Sources of one process apart, for example
// attribute.String("tokenrefresh.source", "billing-api"). Keep them few and
// of low cardinality: they multiply every time series. The option may be
// given several times; the attributes add up.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return func(o *options) { o.attrs = append(o.attrs, attrs...) }
}

func newOptions(opts []Option) *options {
	o := &options{}
	for _, opt := range opts {
		opt(o)
	}
	if o.meterProvider == nil {
		o.meterProvider = otel.GetMeterProvider()
	}
	if o.tracerProvider == nil {
		o.tracerProvider = otel.GetTracerProvider()
	}
	return o
}
