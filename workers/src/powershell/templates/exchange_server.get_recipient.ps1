$recipient = Get-Recipient -Identity ([string]$p.identity)
return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardRecipient $recipient))
