package kernel_test

import (
	"context"
	"fmt"
	"strings"

	"github.com/walb-go/walb/walb/kernel"
)

// Creating a walb device, reading its lsids and deleting it again. This needs
// the WalB kernel module, so the example is compiled but not run.
func ExampleController_StartDev() {
	ctx := context.Background()
	ctl := kernel.NewController()

	p := kernel.DefaultStartParam()
	p.Name = "vol0"
	dev, err := ctl.StartDev(ctx, "/dev/vg0/vol0-log", "/dev/vg0/vol0-data", p)
	if err != nil {
		fmt.Println(err)
		return
	}
	wdev := kernel.NewDevice(dev.Name)
	lsids, err := wdev.Lsids(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("extractable log:", lsids.Oldest, "..", lsids.Permanent)
	if err := ctl.StopDev(ctx, dev.Path(), false); err != nil {
		fmt.Println(err)
	}
}

func ExampleParseLsids() {
	text := "latest       1500\nflush        1500\ncompleted    1500\npermanent    1480\n" +
		"written      1400\nprev_written 1200\noldest       1000\n"
	s, err := kernel.ParseLsids(strings.NewReader(text))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(s.Oldest, s.Permanent, s.Latest, s.HasSubmitted)
	// Output: 1000 1480 1500 false
}

func ExampleStartParam_Validate() {
	p := kernel.DefaultStartParam()
	p.LogFlushIntervalMB = 20
	fmt.Println(p.Validate())
	// Output: 2*log_flush_interval_mb (40) > max_pending_mb (32): kernel: invalid start parameter
}
