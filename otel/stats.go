package tokenrefreshotel

import (
	"context"

	"go.opentelemetry.io/otel/metric"

	"github.com/tokenrefresh/grpc-tokenrefresh/tokensource"
)

// StatsSource is what ObserveStats reads; *tokensource.Source implements it.
type StatsSource interface {
	Stats() tokensource.Stats
}

// ObserveStats reports the state of src at every collection:
// tokenrefresh.callers.waiting, tokenrefresh.refresh.active and
// tokenrefresh.reauth.required. Events cannot give these (an event reports
// how many callers waited only once the refresh has ended), so they are read
// from src.Stats, which takes no lock. Call it once per Source, after New;
// Unregister the returned registration to stop (the Source's Close does not
// do that).
func (o *Observer) ObserveStats(src StatsSource) (metric.Registration, error) {
	return o.meter.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		st := src.Stats()
		active, reauth := int64(0), int64(0)
		if st.InFlight {
			active = 1
		}
		if st.ReauthRequired {
			reauth = 1
		}
		obs.ObserveInt64(o.callersWaiting, st.Waiting, o.base)
		obs.ObserveInt64(o.refreshActive, active, o.base)
		obs.ObserveInt64(o.reauthState, reauth, o.base)
		return nil
	}, o.callersWaiting, o.refreshActive, o.reauthState)
}
