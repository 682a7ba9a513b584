package publish

// Checks is the number of proxy snapshots checked for completeness so far.
func (p *Publisher) Checks() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checks
}

// Composed is the number of proxy snapshots composed so far (set or found
// unchanged).
func (p *Publisher) Composed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.composed
}
