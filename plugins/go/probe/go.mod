module natsplug.dev/plugins/probe

go 1.27

require natsplug.dev/sdk v0.0.0

replace natsplug.dev/sdk => ../../../guest-sdk/go
