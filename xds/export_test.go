package xds

import (
	"context"
	"time"
)

// SetShared replaces only the shared resources (tests publish hand-made
// resources without a model).
func (p *Publisher) SetShared(ctx context.Context, res Resources) error {
	return p.SetAll(ctx, time.Time{}, res, nil)
}
