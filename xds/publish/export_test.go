package publish

// Checks is the number of proxy snapshots checked for completeness so far.
func (p *Publisher) Checks() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checks
}
