package cli

// Tools maps each tool name to its implementation.
var Tools = map[string]Tool{
	"wlog-show": WlogShow,
	"wlog-redo": WlogRedo,
}
