$user = Find-StewardExUser -Identity ([string]$p.identity)
if ($null -eq $user) {
    return (Out-StewardResult -Status 'unchanged' -Prior ([ordered]@{ existed = $false }))
}
$StewardPrior = [ordered]@{ existed = $true; recipient_type_details = [string]$user.RecipientTypeDetails; distinguished_name = [string]$user.DistinguishedName }
Remove-Mailbox -Identity ([string]$user.DistinguishedName) -Confirm:$false
return (Out-StewardResult -Status 'changed' -Result ([ordered]@{ removed = $true }) -Prior $StewardPrior)
